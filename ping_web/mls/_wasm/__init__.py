"""Package data: the wasm-bindgen output of `wasm/` (written by build.sh, not in git)."""
