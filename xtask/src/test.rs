//! `cargo xtask test` and `cargo xtask demo`.
pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub fn demo() -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
