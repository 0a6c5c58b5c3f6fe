//! `uniffi-bindgen`: generates the Python, Kotlin and Swift bindings of `codexpool-ffi` from the
//! built library, with exactly the uniffi version the library was built with.
//!
//! ```text
//! cargo run -p codexpool-uniffi-bindgen --bin uniffi-bindgen -- generate \
//!     --library target/debug/libcodexpool_ffi.so --language python --out-dir bindings/uniffi/generated
//! ```

fn main() {
    uniffi::uniffi_bindgen_main()
}
