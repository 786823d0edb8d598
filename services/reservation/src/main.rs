use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parking_common::telemetry::init("reservation");
    let config = reservation::Config::parse();
    reservation::run(config, parking_common::shutdown::on_signal()).await?;
    Ok(())
}
