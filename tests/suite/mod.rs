mod check;
mod daemon;
mod replay;
