//! Progress of long work: a spinner on a terminal, plain lines otherwise
//! (or with --quiet, only the lines that matter).

use std::io::IsTerminal;
use std::time::Duration;

/// Where progress goes.
pub enum Progress {
    /// Important lines only.
    Quiet,
    /// Every step as a line on stderr.
    Lines,
    /// A spinner on stderr's terminal.
    Spinner(indicatif::ProgressBar),
}

impl Progress {
    /// A spinner when stdout and stderr are terminals and `quiet` is not
    /// set; plain lines when either is redirected (a log, CI).
    pub fn new(quiet: bool) -> Self {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() && std::io::stdout().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress::Spinner(bar)
        } else {
            Progress::Lines
        }
    }

    /// What happens now (replaces the spinner's message).
    pub fn step(&mut self, what: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("vni-lab: {what}"),
            Progress::Spinner(bar) => bar.set_message(what.to_owned()),
        }
    }

    /// A line worth keeping (printed above the spinner, or as a line).
    pub fn note(&mut self, line: &str) {
        match self {
            Progress::Spinner(bar) => bar.println(format!("vni-lab: {line}")),
            _ => eprintln!("vni-lab: {line}"),
        }
    }

    /// A line of results on stdout (above the spinner, which goes on).
    pub fn out(&mut self, line: &str) {
        match self {
            Progress::Spinner(bar) => bar.suspend(|| println!("{line}")),
            _ => println!("{line}"),
        }
    }

    /// A line of results on stderr, when stdout carries a report.
    pub fn err(&mut self, line: &str) {
        match self {
            Progress::Spinner(bar) => bar.suspend(|| eprintln!("{line}")),
            _ => eprintln!("{line}"),
        }
    }

    /// Clears the spinner.
    pub fn done(&mut self) {
        if let Progress::Spinner(bar) = self {
            bar.finish_and_clear();
        }
    }
}
