//! One module per subcommand: each has an `Args` (clap) and a `run(Args) -> anyhow::Result<()>`.

pub mod bench;
pub mod chat;
pub mod inspect;
pub mod pull;
pub mod run;
pub mod serve;
pub mod synth;
pub mod tokenize;
