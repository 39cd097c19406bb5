//! svcproxy compiler.
