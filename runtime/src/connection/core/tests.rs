//! (tests, to come)
