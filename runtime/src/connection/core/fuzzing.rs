//! (harness, to come)
