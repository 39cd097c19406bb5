//! svcproxy agent library.
