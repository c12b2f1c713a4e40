//! `repl`: a Python session at the terminal, or a script's statements one
//! by one as result JSON lines.
//!
//! Interactive (stdin a terminal): `>>> ` reads a statement, `... ` more of
//! a block (a line ending in `:`, an open bracket or a `\`; a block ends at
//! an empty line); output and the value's repr are shown as Python's REPL
//! shows them, an error as its traceback. Otherwise: the whole input is cut
//! into its top-level statements and each prints one JSON line (see
//! [`lattice::session::Reply::to_json`]); the exit code is 1 if any
//! statement failed. `--load` starts from a snapshot, `--save` writes one
//! at the end (wasm tier).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context, Result};
use lattice::session::{Reply, Session, SessionState, DEFAULT_IDLE_TIMEOUT};
use lattice::task::TaskError;

use super::args::{ReplArgs, SessionArgs};
use super::signals;

pub(super) fn run(args: ReplArgs) -> Result<i32> {
    let snapshot = match &args.load {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| super::usage(format!("can't read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let session = open(&args.session, snapshot.as_deref())?;
    let interactive = std::io::stdin().is_terminal();
    let code = if interactive {
        interact(&session)
    } else {
        script(&session)
    };
    if let Some(path) = &args.save {
        let bytes = session.snapshot().context("can't snapshot the session")?;
        std::fs::write(path, bytes).with_context(|| format!("can't write {}", path.display()))?;
    }
    session.close();
    code
}

/// Opens the session of `args` (from `snapshot`, if given; preparing the
/// Wasm guest first if needed); a signal while a statement runs stops it
/// and ends the command.
fn open(args: &SessionArgs, snapshot: Option<&[u8]>) -> Result<std::sync::Arc<Session>> {
    let config = args.config();
    super::prepare_wasm_if_cold(config.tier)?;
    let idle = args.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let session = match snapshot {
        Some(bytes) => Session::restore_with_idle_timeout(config, bytes, idle),
        None => Session::open_with_idle_timeout(config, idle),
    }
    .context("can't open the session")?;
    let session = std::sync::Arc::new(session);
    let closer = std::sync::Arc::downgrade(&session);
    signals::on_signal(move || {
        if let Some(session) = closer.upgrade() {
            session.close();
        }
    });
    Ok(session)
}

fn script(session: &Session) -> Result<i32> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("can't read stdin (it must be UTF-8 text)")?;
    let statements = session.statements(&input)?;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for statement in statements {
        let reply = session.exec(&statement);
        failed |= reply.result.is_err();
        writeln!(out, "{}", reply.to_json())?;
        out.flush()?;
        if reply.state == SessionState::Closed {
            break;
        }
    }
    Ok(match signals::received() {
        Some(signal) => signals::exit_code(signal),
        None => i32::from(failed),
    })
}

fn interact(session: &Session) -> Result<i32> {
    eprintln!(
        "lattice-wasm repl on the {} tier (state is kept between statements; Ctrl-D to quit)",
        session.tier()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let Some(statement) = read_statement(&mut lines)? else {
            return Ok(0);
        };
        if statement.trim().is_empty() {
            continue;
        }
        let reply = session.exec(&statement);
        show(&reply);
        if reply.state == SessionState::Closed {
            eprintln!("the session is closed");
            return Ok(1);
        }
    }
}

/// One statement from the terminal: a line, with the lines of its block.
fn read_statement(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> Result<Option<String>> {
    let mut statement = String::new();
    let mut prompt = ">>> ";
    loop {
        print!("{prompt}");
        std::io::stdout().flush()?;
        let Some(line) = lines.next().transpose()? else {
            println!();
            return Ok((!statement.is_empty()).then_some(statement));
        };
        let block = !statement.is_empty() && prompt == "... " && opens_block(&statement);
        statement.push_str(&line);
        statement.push('\n');
        if block {
            // A block ends at an empty line.
            if line.trim().is_empty() {
                return Ok(Some(statement));
            }
            continue;
        }
        if opens_block(&statement) || open_brackets(&statement) > 0 || line.ends_with('\\') {
            prompt = "... ";
            continue;
        }
        return Ok(Some(statement));
    }
}

/// True if the statement starts a block (its first line ends with `:`).
fn opens_block(statement: &str) -> bool {
    let first = statement.lines().next().unwrap_or_default();
    let code = first.split('#').next().unwrap_or_default().trim_end();
    code.ends_with(':') || first.starts_with('@')
}

/// How many brackets are still open (strings and comments skipped roughly).
fn open_brackets(text: &str) -> i32 {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// Shows a reply as Python's REPL would.
fn show(reply: &Reply) {
    print!("{}", reply.stdout);
    eprint!("{}", reply.stderr);
    match &reply.result {
        Ok(_) => {
            if let Some(repr) = reply.repr.as_deref().filter(|r| *r != "None") {
                println!("{repr}");
            }
        }
        Err(TaskError::Failed {
            traceback,
            type_name,
            message,
        }) => {
            if traceback.is_empty() {
                eprintln!("{type_name}: {message}");
            } else {
                eprint!("{traceback}");
            }
        }
        Err(error) => eprintln!("{error}"),
    }
    let _ = std::io::stdout().flush();
}
