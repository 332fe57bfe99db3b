"""The Gradio app: layout (`blocks`), the Conversation tab's behaviour, event handlers, Diagnostics rendering and style."""
