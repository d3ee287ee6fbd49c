//! Waiting on a shared word (filled in by the lock issue).
