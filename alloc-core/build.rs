//! `cfg(static_tls)`: the `static-tls` feature on a target where the `%fs`-relative slot
//! access is implemented (x86_64 Linux with glibc); elsewhere the feature does nothing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(static_tls)");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if std::env::var_os("CARGO_FEATURE_STATIC_TLS").is_some()
        && target("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && target("CARGO_CFG_TARGET_OS") == "linux"
        && target("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo::rustc-cfg=static_tls");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
