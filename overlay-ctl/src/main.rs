fn main() -> anyhow::Result<()> {
    overlay_ctl::cli::main()
}
