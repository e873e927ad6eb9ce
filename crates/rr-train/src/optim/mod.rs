//! Optimizers with fp32 state that is saved and restored: AdamW, and Muon with auxiliary Adam.
