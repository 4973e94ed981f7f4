//! How a chat becomes the text a model reads: ChatML (`<|im_start|>role … <|im_end|>`, SmolLM2
//! and Qwen2) or Gemma's turns (`<start_of_turn>user|model … <end_of_turn>`, which has no system
//! role: the system text opens the first user turn, as Gemma's own template puts it). Chosen
//! from the chat template the GGUF carries.

/// A chat markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    ChatMl,
    Gemma,
}

impl ChatFormat {
    /// The markup a package's chat template (Jinja text from the GGUF) writes.
    pub fn of(template: Option<&str>) -> ChatFormat {
        match template {
            Some(t) if t.contains("<start_of_turn>") => ChatFormat::Gemma,
            _ => ChatFormat::ChatMl,
        }
    }

    /// The system part: a turn of its own (ChatML; SmolLM2's default when none is given), or
    /// the opening of the first user turn (Gemma; nothing when none is given).
    pub fn system(self, system: Option<&str>) -> Option<String> {
        match self {
            ChatFormat::ChatMl => {
                let system = system.unwrap_or(
                    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                );
                Some(format!("<|im_start|>system\n{system}<|im_end|>\n"))
            }
            ChatFormat::Gemma => system.map(|s| format!("<start_of_turn>user\n{s}\n\n")),
        }
    }

    /// The text that opens a user turn.
    pub fn user_opening(self) -> &'static str {
        match self {
            ChatFormat::ChatMl => "<|im_start|>user\n",
            ChatFormat::Gemma => "<start_of_turn>user\n",
        }
    }

    /// One finished turn; `continues_system`: the first turn after a system part (Gemma's system
    /// part opened a user turn: a user turn continues it, a model turn closes it first).
    pub fn turn(self, user: bool, text: &str, continues_system: bool) -> String {
        match (self, user) {
            (ChatFormat::ChatMl, true) => format!("<|im_start|>user\n{text}<|im_end|>\n"),
            (ChatFormat::ChatMl, false) => format!("<|im_start|>assistant\n{text}<|im_end|>\n"),
            (ChatFormat::Gemma, true) if continues_system => format!("{text}<end_of_turn>\n"),
            (ChatFormat::Gemma, false) if continues_system => {
                format!("<end_of_turn>\n<start_of_turn>model\n{text}<end_of_turn>\n")
            }
            (ChatFormat::Gemma, true) => format!("<start_of_turn>user\n{text}<end_of_turn>\n"),
            (ChatFormat::Gemma, false) => format!("<start_of_turn>model\n{text}<end_of_turn>\n"),
        }
    }

    /// The text after which the model writes its answer.
    pub fn answer_opening(self) -> &'static str {
        match self {
            ChatFormat::ChatMl => "<|im_start|>assistant\n",
            ChatFormat::Gemma => "<start_of_turn>model\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_puts_the_system_text_in_the_first_user_turn() {
        let f = ChatFormat::of(Some("{{ bos_token }}<start_of_turn>user ..."));
        assert_eq!(f, ChatFormat::Gemma);
        let mut text = f.system(Some("Be brief.")).unwrap();
        text.push_str(&f.turn(true, "Hi", true));
        text.push_str(&f.turn(false, "Hello!", false));
        text.push_str(&f.turn(true, "Why?", false));
        text.push_str(f.answer_opening());
        assert_eq!(
            text,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(f.system(None), None);
        // A model turn first closes the user turn the system part opened.
        assert_eq!(
            f.turn(false, "Hello!", true),
            "<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        );
    }

    #[test]
    fn chatml_is_the_default_with_smollm_s_system_turn() {
        let f = ChatFormat::of(None);
        assert_eq!(f, ChatFormat::ChatMl);
        assert!(f.system(None).unwrap().contains("SmolLM"));
        assert_eq!(f.turn(true, "Hi", true), "<|im_start|>user\nHi<|im_end|>\n");
        // The system part is a turn of its own: nothing to close.
        assert_eq!(
            f.turn(false, "Hello!", true),
            "<|im_start|>assistant\nHello!<|im_end|>\n"
        );
    }
}
