use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = parking_common::telemetry::init("parking-lot");
    let config = parking_lot::Config::parse();
    let result = parking_lot::run(config, parking_common::shutdown::on_signal()).await;
    // Flush the last spans whether the service stopped cleanly or not.
    telemetry.shutdown();
    result?;
    Ok(())
}
