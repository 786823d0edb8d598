use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parking_common::telemetry::init("status");
    let config = status::Config::parse();
    status::run(config, parking_common::shutdown::on_signal()).await?;
    Ok(())
}
