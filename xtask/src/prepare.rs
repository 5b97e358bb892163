//! Machine preparation for tests and the demo.
