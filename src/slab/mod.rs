//! The slab pool (the slab issue).
