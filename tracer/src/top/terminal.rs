//! The thin terminal driver of `tracer top`: crossterm raw mode and the alternate screen
//! (through ratatui's `try_init`, which also restores the terminal on a panic), the terminal's
//! events as [`Key`]s, and drawing. Leaving ([`Screen::leave`], or dropping the screen on any
//! way out) restores the terminal.

use std::{io, pin::Pin};

use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures_core::Stream as _;
use ratatui::DefaultTerminal;

use super::{render, ui::Key, Top};

/// What the terminal reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A key the screen acts on.
    Key(Key),
    /// The terminal changed size: draw again.
    Resize,
    /// Anything else (other keys, mouse, focus).
    Other,
    /// The terminal's input is gone.
    Closed,
}

/// The terminal while `tracer top` owns it.
pub struct Screen {
    terminal: Option<DefaultTerminal>,
    events: EventStream,
    color: bool,
}

impl Screen {
    /// Takes the terminal: raw mode, alternate screen. Colours unless `NO_COLOR` is set.
    ///
    /// # Errors
    /// When stdout is not a terminal or cannot be put in raw mode.
    pub fn enter() -> io::Result<Self> {
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let terminal = ratatui::try_init().inspect_err(|_| {
            let _ = ratatui::try_restore();
        })?;
        Ok(Self {
            terminal: Some(terminal),
            events: EventStream::new(),
            color,
        })
    }

    /// Draws what `top` shows.
    ///
    /// # Errors
    /// When writing to the terminal fails.
    pub fn draw(&mut self, top: &Top) -> io::Result<()> {
        if let Some(terminal) = &mut self.terminal {
            let color = self.color;
            terminal.draw(|frame| render::draw(frame, &top.shown, &top.ui, color))?;
        }
        Ok(())
    }

    /// The next event of the terminal (never ready once the input is closed).
    pub async fn next(&mut self) -> Input {
        let event = std::future::poll_fn(|cx| Pin::new(&mut self.events).poll_next(cx)).await;
        match event {
            Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                let key = match k.code {
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        Key::Interrupt
                    }
                    KeyCode::Char(c) => Key::Char(c),
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Up => Key::Up,
                    KeyCode::Down => Key::Down,
                    KeyCode::Backspace => Key::Backspace,
                    _ => return Input::Other,
                };
                Input::Key(key)
            }
            Some(Ok(Event::Resize(..))) => Input::Resize,
            Some(Ok(_)) => Input::Other,
            Some(Err(_)) | None => Input::Closed,
        }
    }

    /// Gives the terminal back: cursor shown, main screen, cooked mode.
    ///
    /// # Errors
    /// When the terminal cannot be restored.
    pub fn leave(mut self) -> io::Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> io::Result<()> {
        if let Some(mut terminal) = self.terminal.take() {
            let _ = terminal.show_cursor();
            drop(terminal);
            ratatui::try_restore()?;
        }
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}
