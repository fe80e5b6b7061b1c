//! Exists so the agent can build-depend on this crate (and be rebuilt when it changes);
//! the programs are in the `lockmesh` binary target.
#![no_std]
