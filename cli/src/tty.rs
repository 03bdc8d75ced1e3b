//! The local terminal: raw mode (restored when the guard drops, on every exit
//! path), window size, prompts without echo, and the detach-key scanner that
//! ends an attach on ctrl-p ctrl-q without stopping the container. Safe code
//! only: termios through nix, the size through `terminal_size`.

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use std::io::{BufRead, IsTerminal, Write};

/// Puts stdin into raw mode while alive; restores the saved settings on drop.
pub struct RawGuard {
    saved: Termios,
}

impl RawGuard {
    /// Enters raw mode on stdin when it is a terminal; None otherwise.
    pub fn enter() -> anyhow::Result<Option<RawGuard>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(&stdin)
            .map_err(|e| anyhow::anyhow!("failed to read terminal settings: {e}"))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| anyhow::anyhow!("failed to set the terminal to raw mode: {e}"))?;
        Ok(Some(RawGuard { saved }))
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// The local terminal's size as (rows, cols), from stdout or else stdin.
pub fn window_size() -> Option<(u16, u16)> {
    terminal_size::terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdin()))
        .map(|(terminal_size::Width(w), terminal_size::Height(h))| (h, w))
}

/// Prints `prompt` to stderr and reads one line from stdin, without echo when
/// stdin is a terminal (for passwords).
pub fn prompt(prompt: &str, echo: bool) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let mut saved = None;
    if !echo && stdin.is_terminal() {
        if let Ok(current) = termios::tcgetattr(&stdin) {
            let mut quiet = current.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            if termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).is_ok() {
                saved = Some(current);
            }
        }
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &saved);
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Finds a detach sequence (default ctrl-p ctrl-q) in a byte stream split into
/// arbitrary chunks. Bytes that could start the sequence are held back until
/// it is clear they do not; they are released with the next chunk.
#[derive(Debug, Clone)]
pub struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

/// What a chunk of input turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Forward these bytes to the container.
    Forward(Vec<u8>),
    /// The detach sequence was typed; these bytes came before it.
    Detach(Vec<u8>),
}

impl DetachScanner {
    /// A scanner for `keys`; an empty sequence never detaches.
    pub fn new(keys: Vec<u8>) -> DetachScanner {
        DetachScanner { keys, matched: 0 }
    }

    /// Feeds one chunk.
    pub fn feed(&mut self, input: &[u8]) -> Scan {
        let mut out = Vec::with_capacity(input.len() + self.matched);
        if self.keys.is_empty() {
            out.extend_from_slice(input);
            return Scan::Forward(out);
        }
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Scan::Detach(out);
                }
            } else {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                    if self.keys.len() == 1 {
                        self.matched = 0;
                        return Scan::Detach(out);
                    }
                } else {
                    out.push(b);
                }
            }
        }
        Scan::Forward(out)
    }

    /// Bytes still held back (sent when input ends).
    pub fn pending(&self) -> &[u8] {
        &self.keys[..self.matched]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [u8; 2] = [0x10, 0x11];

    #[test]
    fn plain_input_passes_through() {
        let mut s = DetachScanner::new(KEYS.to_vec());
        assert_eq!(s.feed(b"ls -l\r"), Scan::Forward(b"ls -l\r".to_vec()));
    }

    #[test]
    fn detaches_on_ctrl_p_ctrl_q_even_across_chunks() {
        let mut s = DetachScanner::new(KEYS.to_vec());
        assert_eq!(s.feed(b"ab\x10"), Scan::Forward(b"ab".to_vec()));
        assert_eq!(s.pending(), &[0x10]);
        assert_eq!(s.feed(b"\x11rest"), Scan::Detach(vec![]));
        let mut s = DetachScanner::new(KEYS.to_vec());
        assert_eq!(s.feed(b"x\x10\x11"), Scan::Detach(b"x".to_vec()));
    }

    #[test]
    fn ctrl_p_alone_is_released_with_the_next_byte() {
        let mut s = DetachScanner::new(KEYS.to_vec());
        assert_eq!(s.feed(b"\x10"), Scan::Forward(vec![]));
        assert_eq!(s.feed(b"a"), Scan::Forward(b"\x10a".to_vec()));
        let mut s = DetachScanner::new(KEYS.to_vec());
        assert_eq!(s.feed(b"\x10\x10\x11"), Scan::Detach(b"\x10".to_vec()));
    }

    #[test]
    fn empty_sequence_never_detaches() {
        let mut s = DetachScanner::new(vec![]);
        assert_eq!(s.feed(b"\x10\x11"), Scan::Forward(b"\x10\x11".to_vec()));
    }
}
