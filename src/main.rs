//! The binary: parse, dispatch, render, map errors to exit codes.

mod cli;
mod printer;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};
use printer::Printer;
use starchive::commands::{self, Context};
use starchive::{Error, ExitStatus};

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, db_origin(&m))));
    let (cli, db_origin) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS;
            }
            // `--json` cannot be read from a command line clap refused: look for it.
            if std::env::args_os().any(|a| a == "--json") {
                // The whole message (which argument, the valid values, the
                // usage), as plain text: this build of clap writes no colours.
                let text = e.to_string();
                Printer::new(true).error(
                    text.trim_start_matches("error: ").trim_end(),
                    ExitStatus::Usage,
                );
            }
            return ExitStatus::Usage.into();
        }
    };
    let printer = Printer::new(cli.json);
    init_logs(printer.log_writer());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitStatus::Error.into();
        }
    };
    let ctx = Context {
        archive: cli.archive_dir(),
        envs: cli.envs.clone(),
        runtime: runtime.handle().clone(),
        progress: printer.progress(),
        db_origin,
    };
    let status = match run(cli.command, &ctx, &printer) {
        Ok(status) => status,
        Err(e) => {
            let message = starchive::redact::text(
                &e.message(&ctx.archive.join(starchive::catalog::CATALOG_FILE)),
            );
            eprintln!("error: {message}");
            if printer.json {
                printer.error(&message, e.exit_status());
            }
            e.exit_status()
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    status.into()
}

fn run(command: Command, ctx: &Context, printer: &Printer) -> Result<ExitStatus, Error> {
    ctx.refuse_empty_env()?;
    match command {
        Command::Snapshot(args) => {
            printer.report(&commands::snapshot::snapshot(ctx, &args.db.db)?);
        }
        Command::Plan => printer.report(&commands::plan::plan(ctx)?),
        Command::Status(args) => {
            let tokens = commands::fetch::TelegramTokens::from_vars(std::env::vars_os());
            printer.report(&commands::status::status(ctx, args.full.full, &tokens)?);
        }
        Command::Fetch(args) => {
            let report = commands::fetch::fetch(ctx, &fetch_options(&args))?;
            printer.report(&report);
            return Ok(report.exit_status());
        }
        Command::Push(args) => {
            let mut opts = push_options(&args.to, args.layout.layout, &args.jobs);
            opts.catalog_part_bytes = args.catalog_part_size;
            let report = commands::push::push(ctx, &opts)?;
            printer.report(&report);
            return Ok(report.exit_status());
        }
        Command::Verify(args) => {
            let opts = commands::verify::VerifyOptions {
                to: args.to,
                layout: args.layout.map(layout),
                deep: args.deep,
                full: args.full.full,
                jobs: 8,
            };
            let report = commands::verify::verify(ctx, &opts)?;
            printer.report(&report);
            return Ok(report.exit_status());
        }
        Command::Backfill(args) => {
            let opts = commands::backfill::BackfillOptions {
                db: args.db.db,
                to: args.to.to,
                apply: args.apply,
                undo: args.undo,
                sync_stickers: args.sync_stickers,
                jobs: 8,
            };
            let report = commands::backfill::backfill(ctx, &opts)?;
            printer.report(&report);
            return Ok(report.exit_status());
        }
        Command::Check(args) => {
            let opts = commands::check::CheckOptions {
                storage: args.storage,
                full: args.full || printer.json,
            };
            let report = commands::check::check(ctx, &opts)?;
            printer.report(&report);
            return Ok(report.exit_status());
        }
        Command::Gallery(args) => {
            printer.report(&commands::gallery::gallery(ctx, args.out.as_deref())?);
        }
        Command::Pull(args) => {
            let opts = commands::pull::PullOptions {
                from: args.from,
                jobs: args.jobs.jobs as usize,
            };
            let report = commands::pull::pull(ctx, &opts)?;
            printer.report(&report);
            return Ok(report.exit_status());
        }
        Command::Run(args) => {
            let fetch_opts = fetch_options(&args.fetch);
            let push_opts = push_options(&args.to, args.layout.layout, &args.fetch.jobs);
            commands::run::check_options(ctx, &push_opts.to, &fetch_opts.telegram_api)?;
            let report = commands::run::in_turn(
                || commands::snapshot::snapshot(ctx, &args.db.db),
                || commands::fetch::fetch(ctx, &fetch_opts),
                || commands::push::push(ctx, &push_opts),
            );
            // The stages that ran are reported whatever stopped the run.
            printer.report(&report);
            if let Some(failure) = &report.failure {
                eprintln!("error: {}: {}", failure.failed_stage, failure.error);
            }
            return Ok(report.exit_status());
        }
    }
    Ok(ExitStatus::Success)
}

fn fetch_options(args: &cli::FetchArgs) -> commands::fetch::FetchOptions {
    commands::fetch::FetchOptions {
        storage: args.storage.clone(),
        telegram_api: args.telegram_api.clone(),
        telegram_tokens: commands::fetch::TelegramTokens::from_vars(std::env::vars_os()),
        jobs: args.jobs.jobs as usize,
        include_photos: args.include.contains(&cli::Include::Photos),
        retry_failed: args.retry_failed,
        max_file_size: args.max_file_size,
        telegram_rate: args.telegram_rate,
    }
}

fn push_options(
    to: &cli::ToArg,
    layout_arg: Option<cli::Layout>,
    jobs: &cli::JobsArg,
) -> commands::push::PushOptions {
    commands::push::PushOptions {
        to: to.to.clone(),
        layout: layout_arg.map(layout),
        jobs: jobs.jobs as usize,
        catalog_part_bytes: starchive::manifest::CATALOG_PART_BYTES,
    }
}

fn layout(arg: cli::Layout) -> starchive::layout::Layout {
    match arg {
        cli::Layout::Mirror => starchive::layout::Layout::Mirror,
        cli::Layout::Cas => starchive::layout::Layout::Cas,
    }
}

/// Where `--db` was given: `DATABASE_URL` when clap took it from there.
fn db_origin(matches: &clap::ArgMatches) -> &'static str {
    let from_env = matches
        .subcommand()
        .filter(|(_, m)| m.ids().any(|id| id == "db"))
        .and_then(|(_, m)| m.value_source("db"))
        == Some(clap::parser::ValueSource::EnvVariable);
    if from_env { "DATABASE_URL" } else { "--db" }
}

/// Logs go to stderr; `STARCHIVE_LOG` takes `tracing` filter directives.
fn init_logs(writer: printer::LogWriter) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STARCHIVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("starchive=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}
