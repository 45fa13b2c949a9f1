pub async fn run(_t: Option<Vec<String>>, _b: Option<std::path::PathBuf>) -> anyhow::Result<std::process::ExitCode> { todo!() }
