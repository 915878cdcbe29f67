//! kestrel-cuda
