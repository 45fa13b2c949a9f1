//! The Redis protocol (RESP2 and RESP3) front door of a node.
//!
//! [`codec`] takes requests off a connection's read buffer, held to limits that refuse a
//! hostile length as soon as its header arrives, and writes replies straight into the
//! write buffer in the protocol version the connection chose.

pub mod codec;
