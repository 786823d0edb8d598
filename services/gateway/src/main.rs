use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parking_common::telemetry::init("gateway");
    let config = gateway::Config::parse();
    gateway::run(config, parking_common::shutdown::on_signal()).await?;
    Ok(())
}
