//! kestrel-server
