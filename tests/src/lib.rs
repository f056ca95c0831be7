//! Rafka's integration tests (in `tests/tests/`) and, later, the `rafka-jepsen` fault suite.
//!
//! Tests here drive real files, real processes and real TCP; unit tests live beside the code
//! they test.
