use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parking_common::telemetry::init("parking-lot");
    let config = parking_lot::Config::parse();
    parking_lot::run(config, parking_common::shutdown::on_signal()).await?;
    Ok(())
}
