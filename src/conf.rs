//! Configuration (placeholder, being written).
/// Configuration.
#[derive(Debug, Clone, Default)]
pub struct RpcConf {}
