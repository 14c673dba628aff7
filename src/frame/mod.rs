//! Spark frames (placeholder, being written).
