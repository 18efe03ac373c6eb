mod check;
mod daemon;
mod drift;
mod replay;
