use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parking_common::telemetry::init("delivery");
    let config = delivery::Config::parse();
    delivery::run(config, parking_common::shutdown::on_signal()).await?;
    Ok(())
}
