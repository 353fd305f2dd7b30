//! Front ends: how users reach a volume.
pub mod nbd;
