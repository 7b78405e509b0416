//! sockact's kernel side: thin tracepoint hooks that keep only what a watched process does, and
//! write fixed-size records (sockact-common) to one ring buffer.
#![no_std]
#![no_main]

mod filter;
mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
