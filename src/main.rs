//! `macie-operator`: the operator binary (`run`) and the CRD generator (`crd`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "macie-operator",
    version,
    about = "Keeps Amazon Macie in the state your manifests declare"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers.
    Run,
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run | Command::Crd => {
            eprintln!("macie-operator: not implemented yet");
            std::process::exit(2);
        }
    }
}
