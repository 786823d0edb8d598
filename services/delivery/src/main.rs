use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = parking_common::telemetry::init("delivery");
    let config = delivery::Config::parse();
    let result = delivery::run(config, parking_common::shutdown::on_signal()).await;
    // Flush the last spans whether the service stopped cleanly or not.
    telemetry.shutdown();
    result?;
    Ok(())
}
