// starchive gallery: plays animated (tgs) stickers with lottie-web.
// Each animation's data arrives in a script of its own (anim/xx/SHA.js)
// that calls starchiveAnimation: a page opened from file:// cannot fetch()
// a neighbouring file, but it can load a script.
"use strict";
window.starchiveAnimation = function (sha, data) {
  var players = document.querySelectorAll('[data-tgs="' + sha + '"]');
  for (var i = 0; i < players.length; i++) {
    // lottie changes the data it is given: each player gets its own copy.
    lottie.loadAnimation({
      container: players[i],
      renderer: "svg",
      loop: true,
      autoplay: true,
      animationData: i === players.length - 1 ? data : JSON.parse(JSON.stringify(data)),
    });
  }
};
