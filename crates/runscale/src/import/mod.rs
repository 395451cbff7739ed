//! `runscale import <seed>`: converters from the configuration of an autoscaler runscale
//! replaces to a runscale configuration file, one file per seed. Each is pure text to text
//! (plus warnings); the generated file is checked like any other (`runscale check`).
//!
//! - [`gitlab_fleet`]: gitlab-runners-fleet's JSON configuration.

pub mod gitlab_fleet;

/// The seeds `runscale import` converts from.
#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// gitlab-runners-fleet's JSON configuration (the `scale` program's keys: `gitlab_host`,
    /// `gitlab_token`, `runner_tag`, `runner_max_jobs`, `instance_*`).
    GitlabRunnersFleet(gitlab_fleet::Args),
}

/// Runs one import.
pub fn run(command: &ImportCommand, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    match command {
        ImportCommand::GitlabRunnersFleet(args) => gitlab_fleet::run(args, out),
    }
}
