#![no_main]
//! `patchbay::hostile::webhook` on arbitrary bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| patchbay::hostile::webhook(data));
