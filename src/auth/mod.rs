//! Who may publish or read: peer rules and grants, JWT checking, token minting.

pub mod access;
pub mod jwt;
pub mod mint;

#[cfg(test)]
mod proptests;
