//! Shared support for the integration tests in `tests/tests/`: certificates,
//! URLs for every transport, and bounded waits.
