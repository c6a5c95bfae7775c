"""Entry shapes other than OpenAI's: request checks and translation, answers in their shapes."""
