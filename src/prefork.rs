//! The pre-fork master (the pre-fork issue).
