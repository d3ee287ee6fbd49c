//! Named zones (the zones issue).
