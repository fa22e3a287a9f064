"""What every layer may use: parameter paths and masks (`partition`), the config error
type (`errors`). Nothing here imports the rest of ftjax."""
