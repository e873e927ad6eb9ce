//! Packed token data: tokenisation and packing, memory-mapped shards, a resumable loader.
