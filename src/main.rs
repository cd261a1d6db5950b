use clap::Parser;
use infergate::cli::{self, Cli};

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    if let Err(message) = cli::run(Cli::parse()).await {
        eprintln!("infergate: {message}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
