//! The two commands of the drop-in routes (the ARK snapshot route of seed 000
//! and the relay routes of seeds 000 and 002): `ping` and `refresh`, as plain
//! text or as `{"type": …}`.

use serde_json::Value;

/// What a drop-in client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Answer `{"type":"pong","timestamp":…}`.
    Ping,
    /// Send the channel's snapshot again.
    Refresh,
}

/// `ping`, `refresh`, `{"type":"ping"}` … → the command; `None` for anything else.
pub fn parse(text: &[u8]) -> Option<Command> {
    let word = |w: &str| match w {
        "ping" => Some(Command::Ping),
        "refresh" => Some(Command::Refresh),
        _ => None,
    };
    let trimmed = std::str::from_utf8(text).ok()?.trim();
    if let Some(cmd) = word(trimmed) {
        return Some(cmd);
    }
    let value: Value = serde_json::from_str(trimmed).ok()?;
    word(value.get("type")?.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_as_text_or_json() {
        assert_eq!(parse(b"ping"), Some(Command::Ping));
        assert_eq!(parse(b" refresh\n"), Some(Command::Refresh));
        assert_eq!(parse(br#"{"type":"ping"}"#), Some(Command::Ping));
        assert_eq!(
            parse(br#"{"type":"refresh","x":1}"#),
            Some(Command::Refresh)
        );
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(br#"{"type":"dance"}"#), None);
        assert_eq!(parse(&[0xff, 0xfe]), None);
    }
}
