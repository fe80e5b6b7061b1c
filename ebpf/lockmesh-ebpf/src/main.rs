//! lockmesh's kernel programs. One object, loaded by the agent (see agent/src/kernel).
#![no_std]
#![no_main]
// Map keys and values go to the helpers by reference: one copy of each on the BPF stack, where
// the verifier wants it, rather than a copy per call.
#![allow(clippy::needless_borrows_for_generic_args)]

mod antispoof;
mod capture;
mod maps;
mod observer;
mod strict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
