//! The `rafka` command-line client (see /work/shared/CONTRACT.md).
